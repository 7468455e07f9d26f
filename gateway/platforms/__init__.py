"""The platforms: every meter type the gateway reads and every platform it delivers to, one folder each.

``<name>/__init__.py`` declares ``PLATFORM`` (:mod:`gateway.platforms.plugin`); ``<name>/config.py`` is its part of
the configuration file; ``<name>/source.py`` or ``<name>/sink.py`` does the work, against the protocols of
:mod:`gateway.platforms.source` and :mod:`gateway.platforms.sink`. :mod:`gateway.platforms.all` lists them, one line
each. docs/design.md says where everything else goes.
"""
