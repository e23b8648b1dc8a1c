"""Sources of data, each turned into the canonical Yandex Music files.

``synthetic`` generates them; the adapters ``yandex``, ``yambda``, ``ium``, ``movielens``
and ``lastfm`` read a real source's raw folder. Every adapter returns a
:class:`~musicrec.sources.base.SourceData`, which :func:`musicrec.data.build_dataset`
validates against the data contract and writes to ``data/<run>/``.
"""
