"""Load-test app (the one shipped as ``cl_scale/loadtest/app.py``): echoes and streams.

``echo`` any text -> ``echo=<text> instance=<id>``; ``stream N`` -> N streamed tokens ``t0 t1 ...``.

    cl-scale up loadtest/app.py --replicas 3        (or: chainlit run loadtest/app.py)
"""

from cl_scale.loadtest.app import *  # noqa: F401,F403  (importing registers its Chainlit handlers)
