"""``python -m ddf_ops``: the demo (see ``ddf_ops.demo``)."""

from .demo import main

raise SystemExit(main())
