"""Built-in attacks, one file each; installed as ``mmrobust.attacks``.

Add an attack by dropping a module here that registers it with
``@register_attack("name")``; the registry imports every module of this
package on first lookup.
"""

if __name__ != "mmrobust.attacks":
    raise ImportError(
        f"the attacks package must be imported as 'mmrobust.attacks', not {__name__!r}; "
        "install mmrobust (pip install -e .) instead of putting the repository on sys.path"
    )
