"""Sources of data, each turned into the canonical Yandex Music files.

``synthetic`` generates them; the adapters ``yandex``, ``yambda``, ``ium``, ``movielens``,
``lastfm`` and ``lastfm1k`` read a real source's raw folder (``data.source`` names the
module: :func:`musicrec.data.build_dataset` imports ``musicrec.sources.<source>`` and calls
its ``load``). Every adapter returns a :class:`~musicrec.sources.base.SourceData`, which
:func:`musicrec.data.build_dataset` validates against the data contract and writes to
``data/<run>/``.
"""
