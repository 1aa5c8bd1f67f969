"""Built-in defenses, one file each; installed as ``mmrobust.defenses``.

Add a defense by dropping a module here that registers a class with
``@register_defense("name")``; the registry imports every module of this
package on first lookup.
"""

if __name__ != "mmrobust.defenses":
    raise ImportError(
        f"the defenses package must be imported as 'mmrobust.defenses', not {__name__!r}; "
        "install mmrobust (pip install -e .) instead of putting the repository on sys.path"
    )
