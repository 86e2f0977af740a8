"""Commands that render deployments: ``render``, ``render-k8s`` and ``init``.

Why arguments are plain strings validated here (not typer's ``exists=``/``Choice``): click's own
errors print a usage block; ours are one line (exit 2) like every other cl-scale error. Renderers
are imported lazily and never import Chainlit, so these commands start fast.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from cl_scale.cli import app
from cl_scale.errors import UserError

TARGETS = ("nginx", "k8s", "compose")

_VALUES_HELP = "Values file (YAML); repeat to merge left to right."
_SET_HELP = "Override one value, helm style: a.b=c, list[0]=x; true/false/null/numbers are typed, quote to keep a string."


def _values(files: list[str], sets: list[str]):
    from cl_scale.config.loader import load_values

    return load_values([Path(f) for f in files], list(sets))


def _renderer(target: str) -> Callable:
    """``render(values) -> {relative_path: text}`` for a target (imported only when needed)."""
    if target == "nginx":
        from cl_scale.render.nginx import render
    elif target == "compose":
        from cl_scale.render.compose import render
    elif target == "k8s":
        from cl_scale.render.k8s import render
    else:
        raise UserError(f"target={target!r}: must be one of {', '.join(TARGETS)}")
    return render


def _stream(target: str, values) -> str:
    """``--out -``: one document on stdout. k8s: every manifest (never a Secret); nginx: the
    conf.d snippet for an existing nginx; compose: compose.yaml."""
    if target == "k8s":
        from cl_scale.render.k8s import render_stream

        return render_stream(values)
    files = _renderer(target)(values)
    return files["conf.d/chainlit.conf" if target == "nginx" else "compose.yaml"]


def _show(path: object) -> str:
    from cl_scale.config.loader import _show as show

    return show(path)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {_show(out)}: exists and is not a directory")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {_show(out)}: {_show(parent)} is not a directory")


def write_files(out: Path, files: dict[str, str]) -> list[Path]:
    """Write ``files`` under ``out`` (atomic per file); refuses paths escaping ``out``."""
    _check_out_dir(out)
    root = out.resolve()
    written = []
    for rel, text in files.items():
        dest = (root / rel).resolve()
        if root != dest and root not in dest.parents:
            raise UserError(f"refusing to write {rel!r} outside {_show(out)}")
        if dest.exists() and dest.is_dir():
            raise UserError(f"{_show(dest)}: is a directory, expected a file")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, dest)
        except OSError as exc:
            raise UserError(f"cannot write {_show(dest)}: {_show(exc.strerror or exc)}") from None
        written.append(dest)
    return written


def _render(target: str, files: list[str], sets: list[str], out: Optional[str]) -> None:
    if target not in TARGETS:
        raise UserError(f"target={target!r}: must be one of {', '.join(TARGETS)}")
    dest = None if out == "-" else Path(out or target)
    if dest is not None:
        _check_out_dir(dest)  # fail before the (possibly slow) render
    values = _values(files, sets)
    if dest is None:
        text = _stream(target, values)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    if target == "k8s":
        from cl_scale.render.k8s import render as render_k8s

        again = ["cl-scale", "render", "k8s", *[a for f in files for a in ("-f", f)],
                 *[a for kv in sets for a in ("--set", kv)], "--out", str(dest)]
        rendered = render_k8s(values, command=shlex.join(again))
    else:
        rendered = _renderer(target)(values)
    written = write_files(dest, rendered)
    typer.echo(f"wrote {len(written)} files to {dest}/")


@app.command(
    "render",
    help=(
        "Render one target (nginx, k8s or compose) from values.\n\n"
        "Values: defaults, then each -f file merged left to right, then each --set. "
        "--out DIR writes files (default ./TARGET); --out - prints one document: nginx = the "
        "conf.d snippet for an existing nginx, k8s = all manifests, compose = compose.yaml.\n\n"
        "Examples:\n\n\b\n"
        "  cl-scale render nginx --set replicas=4 --out -\n"
        "  cl-scale render k8s -f cl-scale.yaml -f prod.yaml --set ingress.host=chat.example.com\n"
        "  cl-scale render compose -f cl-scale.yaml --out deploy/compose\n"
        "  cl-scale render nginx --set sticky.mode=cookie --set app.port=9000"
    ),
)
def render_cmd(
    target: str = typer.Argument(..., metavar="TARGET", help="nginx | k8s | compose"),
    values_files: list[str] = typer.Option([], "-f", "--values", metavar="FILE", help=_VALUES_HELP),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=_SET_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="DIR|-",
                                      help="Output directory (default ./TARGET), or - for stdout."),
) -> None:
    _render(target, values_files, sets, out)


@app.command(
    "render-k8s",
    help=(
        "Alias of `cl-scale render k8s`: Kubernetes manifests (kustomize directory).\n\n"
        "Examples:\n\n\b\n"
        "  cl-scale render-k8s -f cl-scale.yaml --out k8s\n"
        "  cl-scale render-k8s --set replicas=5 --out - | kubectl apply -f -"
    ),
)
def render_k8s_cmd(
    values_files: list[str] = typer.Option([], "-f", "--values", metavar="FILE", help=_VALUES_HELP),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=_SET_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", metavar="DIR|-",
                                      help="Output directory (default ./k8s), or - for stdout."),
) -> None:
    _render("k8s", values_files, sets, out)


# Files next to an app that belong in its image (copied with the app when it lives outside DIR).
_APP_COMPANIONS = ("requirements.txt", "chainlit.md", ".chainlit", "public")


@app.command(
    "init",
    help=(
        "Start a deployment: write cl-scale.yaml (every value, documented) and render every "
        "target into DIR: nginx/, k8s/, compose/, Dockerfile (with cl-scale's own wheel in wheels/ "
        "when it runs from a source checkout), .dockerignore, .env.example, loadtest/.\n\n"
        "--app names your Chainlit app (relative to the current directory, or to DIR): an app outside "
        "DIR is copied into it with requirements.txt, chainlit.md, .chainlit/ and public/ if present; "
        "with no app at all, a starter app.py is written. The output says which.\n\n"
        "A non-empty DIR is refused unless --force (which overwrites cl-scale's files, never your app).\n\n"
        "Examples:\n\n\b\n"
        "  cl-scale init deploy --app app.py --replicas 3\n"
        "  cl-scale init . --app chat.py --force --set ingress.host=chat.example.com"
    ),
)
def init_cmd(
    directory: str = typer.Argument(".", metavar="DIR", help="Deployment directory (default: current)."),
    app_path: str = typer.Option("app.py", "--app", metavar="APP.py",
                                 help="Your Chainlit app (relative to the current directory, or to DIR)."),
    replicas: Optional[str] = typer.Option(None, "--replicas", metavar="N", help="Number of instances (1..100)."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help=_SET_HELP),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty DIR (overwrites cl-scale files)."),
) -> None:
    import shutil

    from cl_scale.config.loader import documented_yaml
    from cl_scale.ops.packaging import ship_wheel
    from cl_scale.render import scaffold

    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise UserError(f"DIR {_show(root)}: exists and is not a directory")
    source = _find_app(root, app_path)
    module = (source.resolve().relative_to(root.resolve()).as_posix() if source and _inside(source, root)
              else Path(app_path).name)
    if root.is_dir() and not force:
        others = sorted(p.name for p in root.iterdir() if p.resolve() != (root / module).resolve())
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise UserError(f"DIR {_show(root)} is not empty ({_show(shown)}): use --force to write cl-scale files "
                            "into it (your app is never overwritten)")
    early = [f"app.module={_quoted(module)}"]
    if replicas is not None:
        early.insert(0, f"replicas={replicas}")
    values = _values([], early + list(sets))

    root.mkdir(parents=True, exist_ok=True)
    wheel = ship_wheel(root / "wheels")
    files: dict[str, str] = {"cl-scale.yaml": documented_yaml(values)}
    files.update(scaffold.render(values, wheel=wheel.name if wheel else None))
    for target in TARGETS:
        rendered = (_renderer(target)(values) if target != "k8s" else
                    _renderer(target)(values, command="cl-scale render k8s -f cl-scale.yaml --out k8s"))
        files.update({f"{target}/{rel}": text for rel, text in rendered.items()})
    copied = []
    if source is None:
        files[module] = scaffold.starter_app()
        about_app = f"wrote a starter app {module} (no app at {_show(app_path)})"
    elif _inside(source, root):
        about_app = f"uses your app {module}"
    else:
        dest = root / module
        if dest.exists() and dest.read_bytes() != source.read_bytes():
            raise UserError(f"DIR {_show(root)} already has a different {module}: remove it or pick another DIR")
        shutil.copy2(source, dest)
        for name in _APP_COMPANIONS:
            extra = source.parent / name
            if extra.exists() and not (root / name).exists():
                (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, root / name)
                copied.append(name)
        about_app = f"copied your app {_show(source)}" + (f" (and {', '.join(copied)})" if copied else "") + \
            f" into {_show(root)}"
    written = write_files(root, files)
    typer.echo(f"wrote {len(written)} files to {_show(root)}/; {about_app}"
               + (f"; cl-scale {wheel.name} in wheels/ for the image" if wheel else ""))
    d = _show(root)
    typer.echo("next:\n"
               f"  1. docker build -t {values.app.image} {d}\n"
               f"     (the name is app.image in {d}/cl-scale.yaml: point it at your registry, then re-render "
               f"k8s/ and compose/ with cl-scale render)\n"
               f"  2. one host:   cd {d}/compose && cp .env.example .env (fill it) && docker compose up -d\n"
               f"  3. Kubernetes: cd {d}/k8s && cp secrets.env.example secrets.env (fill it) && kubectl apply -k .")


def _find_app(root: Path, app_path: str) -> Path | None:
    for candidate in (Path(app_path), root / app_path):
        if candidate.is_file():
            return candidate
    return None


def _inside(path: Path, root: Path) -> bool:
    return root.resolve() in path.resolve().parents


def _quoted(text: str) -> str:
    """--set value that stays a string whatever it looks like (e.g. an app named 1.py)."""
    return f'"{text}"'
