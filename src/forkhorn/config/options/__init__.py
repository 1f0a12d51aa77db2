"""Every setting, declared once, one module per section of ``docs/settings.md``.

Each module defines one options class whose ``SECTION`` is the doc heading and whose
``Setting`` attributes are the settings, in the order the docs list them. ``Config``
inherits from all of them (see ``config/registry.py``), so adding a setting here is the
whole change: the flag, env handling, config-file key and doc follow from it.
"""
