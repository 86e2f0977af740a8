"""Project scaffold written by ``cl-scale init``: Dockerfile, .dockerignore, .env.example,
loadtest/ and (only when the user has none) a starter ``app.py``.

Why templates with ``tojson``: the Dockerfile's exec-form ``CMD`` is a JSON array, so the module
path goes in as JSON and cannot break the line whatever it contains.
"""

from __future__ import annotations

import jinja2

from cl_scale import __version__
from cl_scale.config.values import Values
from cl_scale.contract import SECRET_ENV
from cl_scale.render import templates_dir


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "scaffold")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def env_example(values: Values) -> str:
    """Keys with EMPTY values: secrets are never rendered."""
    lines = ["# Copy to .env and fill in. Never commit .env.", ""]
    from cl_scale.render.k8s_bridges import secret_keys

    for key, why in {**SECRET_ENV, **secret_keys(values)}.items():
        lines += [f"# {why}", f"{key}=", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def image_extra(values: Values) -> str:
    """The pip extras the image needs for what values run from it (``[autogen,bridges,grpc]``, some, or none)."""
    extras = [name for name, on in (("autogen", values.autogen.enabled), ("bridges", bool(values.bridges)),
                                    ("grpc", values.grpcGateway.enabled)) if on]
    return f"[{','.join(extras)}]" if extras else ""


def starter_app() -> str:
    return _env().get_template("app.py.j2").render()


def render(values: Values, wheel: str | None = None) -> dict[str, str]:
    """``wheel``: file name of the cl-scale wheel ``init`` placed in ``wheels/`` (None: install
    ``cl-scale==<version>`` from the package index)."""
    env = _env()
    cmd = [values.app.module, "--host", "0.0.0.0", "--port", str(values.app.port)]
    return {
        "Dockerfile": env.get_template("Dockerfile.j2").render(values=values, cmd=cmd, version=__version__,
                                                               wheel=wheel,
                                                               extra=image_extra(values)),
        ".dockerignore": env.get_template("dockerignore.j2").render(),
        ".env.example": env_example(values),
        "loadtest/README.md": env.get_template("loadtest/README.md.j2").render(values=values),
        "loadtest/locustfile.py": env.get_template("loadtest/locustfile.py.j2").render(values=values),
    }
