"""Names shared by the values model, the renderers and the runtime: one owner for each.

Nothing here imports anything heavy: render commands and the runtime both read it.
"""

from __future__ import annotations

#: Redis URL schemes cl-scale accepts everywhere (flags, env, values).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")

#: Secrets: they live in the Kubernetes Secret named by ``auth.secretName`` or compose's ``.env``,
#: never in values, ConfigMaps, rendered ``env`` values, URLs in logs or error messages.
#: key -> what it is (the comment of ``secrets.env.example`` / ``.env.example``).
SECRET_ENV = {
    "CHAINLIT_AUTH_SECRET": "signs Chainlit's auth tokens (`chainlit create-secret`)",
    "REDIS_PASSWORD": "password of the bundled Redis (or of your external Redis)",
    "CL_SCALE_WORKER_KEYS": "keys of processes allowed to push messages, id:secret[;users=a|b] (may stay empty)",
    "CL_SCALE_GATEWAY_TOKENS": "bearer tokens of the worker HTTP gateway, id:token[;users=a|b] (may stay empty)",
    "CL_SCALE_DOCTOR_TOKEN": "bearer token of the /cl-scale/doctor/ probes `cl-scale doctor --token` uses "
                             "(may stay empty: no probes)",
    "REDIS_WORKER_PASSWORD": "bundled Redis only: password of the least-privilege `clscale-worker` "
                             "user workers connect with (may stay empty: no such user)",
}
#: Secrets a worker process reads (``cl-scale send``; broker passwords of ``cl-scale bridge`` and
#: the outbound publisher): never values either.
WORKER_SECRET_ENV = ("CL_SCALE_WORKER_KEY", "CL_SCALE_KAFKA_PASSWORD", "CL_SCALE_AMQP_PASSWORD")

#: Env names the renderers set themselves: ``app.env`` may not set them. name -> why.
RENDERED_ENV = {
    "CL_SCALE_REDIS_URL": "set by cl-scale from redis.url / redis.enabled",
    "REDIS_URL": "cl-scale reads CL_SCALE_REDIS_URL; set redis.url instead",
    "CL_SCALE_SESSION_TIMEOUT": "set by cl-scale from app.sessionTimeout",
    "CL_SCALE_DRAIN_SECONDS": "set by cl-scale from drain.seconds",
    "CL_SCALE_INSTANCE_ID": "set by cl-scale per instance",
    "CL_SCALE_ADVERTISE_URL": "set by cl-scale per instance",
    "CL_SCALE_ADVERTISE_HOST": "set by cl-scale per instance (the pod IP)",
    "CL_SCALE_ADMIN_PORT": "set by cl-scale from app.adminPort",
    "CL_SCALE_WEBSOCKET_ONLY": "set by cl-scale from websocketOnly",
    "CHAINLIT_APP_ROOT": "set by cl-scale (the pod's writable dirs are mounted under /app)",
    "POD_NAME": "set by cl-scale from the downward API (the instance id)",
    "POD_IP": "set by cl-scale from the downward API (the advertise URL)",
}


def reserved_env_reason(name: str) -> str | None:
    """Why ``app.env`` may not set ``name`` (None if it may)."""
    if name in SECRET_ENV or name in WORKER_SECRET_ENV:
        return "a secret: put it in the auth.secretName Secret (k8s) or .env (compose), never in values"
    return RENDERED_ENV.get(name)


#: The user of the generated Dockerfile (k8s securityContext, compose ``user``).
APP_UID = 10001
#: Redis key prefix instances use unless ``CL_SCALE_PREFIX`` says otherwise.
DEFAULT_PREFIX = "clscale"
