"""Compare a desired object with the observed one and compute the smallest merge patch.

The operator owns only what it sets: fields that admission webhooks or controllers add (KServe
defaults, kubectl annotations) are left alone, so re-applying an unchanged spec writes nothing.
Maps listed in `owned_maps` are owned whole: keys the desired state dropped are deleted.
"""

from __future__ import annotations

from typing import Any

# Maps (by path) whose keys the operator owns entirely in an InferenceService.
IS_OWNED_MAPS = (
    # canary fields: removed when the canary ends (promotion or rollback)
    ("spec", "canary"),
    ("spec", "predictor", "canaryTrafficPercent"),
    ("spec", "predictor", "name"),
    ("metadata", "annotations", "modelops.dev/canary-model"),
    ("spec", "predictor", "nodeSelector"),
    ("spec", "predictor", "model", "resources", "requests"),
    ("spec", "predictor", "model", "resources", "limits"),
)


def merge_patch(observed: Any, desired: Any, owned_maps: tuple[tuple[str, ...], ...] = (),
                _path: tuple[str, ...] = ()) -> Any:
    """A JSON merge patch turning `observed` into a superset of `desired`; None if none needed.

    Lists are atomic in merge patches: a differing list is replaced whole.
    """
    if isinstance(desired, dict) and isinstance(observed, dict):
        patch: dict = {}
        for key, want in desired.items():
            sub = merge_patch(observed.get(key), want, owned_maps, _path + (key,)) \
                if key in observed else want
            if sub is not None:
                patch[key] = sub
        if _path in owned_maps:
            for key in observed:
                if key not in desired:
                    patch[key] = None  # merge-patch deletion
        return patch or None
    if isinstance(desired, dict) and not desired and observed is None:
        return None
    return None if observed == desired else desired


def drop_owned_absent(desired: dict, observed: dict, owned_maps: tuple[tuple[str, ...], ...]) -> dict:
    """Add explicit deletions for owned maps the desired state no longer has at all."""
    patch: dict = {}
    for path in owned_maps:
        node = observed
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        want = desired
        for key in path:
            want = want.get(key) if isinstance(want, dict) else None
        if node is not None and want is None:  # 0 and {} are values too
            cursor = patch
            for key in path[:-1]:
                cursor = cursor.setdefault(key, {})
            cursor[path[-1]] = None
    return patch


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def status_patch(old: dict, new: dict) -> dict | None:
    """Merge patch for `.status` (every key the operator computes is owned): it makes `old` equal
    to `new`, so keys `new` lacks are set to null at every depth (a merge patch alone would keep
    e.g. `status.canary.version` after a promotion). None when nothing differs."""
    return _replacing(old, new) or None


def _replacing(old, new):
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch = {k: _replacing(old.get(k), v) for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
