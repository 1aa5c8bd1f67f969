"""Built-in studies, one file each; installed as ``mmrobust.studies``.

Add a study by dropping a module here that registers a :class:`mmrobust.study.Study` subclass with
``@register_study("name")``; the registry imports every module of this package on first lookup, and
``mmrobust study NAME`` runs it.
"""

if __name__ != "mmrobust.studies":
    raise ImportError(
        f"the studies package must be imported as 'mmrobust.studies', not {__name__!r}; "
        "install mmrobust (pip install -e .) instead of putting the repository on sys.path"
    )
