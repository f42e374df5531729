"""Registry of Modbus meter profiles: name -> :class:`Profile`.

The built-in profiles are the ``*.yaml`` files of this package, loaded on first use.
Users add their own meters with :func:`register_file`.  A name is registered once:
a second profile of the same name is a :class:`~gateway.errors.ProfileError`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gateway.drivers.profiles.model import Profile, RelaySpec, load_profile, parse_profile
from gateway.errors import ProfileError

__all__ = [
    "Profile",
    "ProfileError",
    "Registry",
    "RelaySpec",
    "builtin_registry",
    "get",
    "load_profile",
    "names",
    "parse_profile",
    "register",
    "register_file",
]


class Registry:
    """Profiles by name; duplicates refused."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}

    def add(self, profile: Profile) -> Profile:
        """Register ``profile``; ProfileError if its name is taken."""
        taken = self._profiles.get(profile.name)
        if taken is not None:
            raise ProfileError(
                f"{profile.source or '<memory>'}: profile name {profile.name!r} is already"
                f" registered (from {taken.source or '<memory>'})"
            )
        self._profiles[profile.name] = profile
        return profile

    def add_file(self, path: str | Path) -> Profile:
        """Load a profile file and register it."""
        return self.add(load_profile(path))

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._profiles)

    def get(self, name: str) -> Profile:
        """The profile called ``name``; ProfileError naming the known ones if none."""
        try:
            return self._profiles[name]
        except KeyError:
            raise ProfileError(
                f"no meter profile {name!r}; known: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def __len__(self) -> int:
        return len(self._profiles)


_BUILTIN: Registry | None = None


def builtin_registry() -> Registry:
    """The process-wide registry, holding the built-in profiles (loaded once)."""
    global _BUILTIN
    if _BUILTIN is None:
        registry = Registry()
        package = resources.files(__name__)
        for entry in sorted(package.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".yaml"):
                with resources.as_file(entry) as path:
                    registry.add_file(path)
        _BUILTIN = registry
    return _BUILTIN


def names() -> list[str]:
    """Names of all registered profiles, sorted."""
    return builtin_registry().names()


def get(name: str) -> Profile:
    """The registered profile called ``name``; ProfileError if none."""
    return builtin_registry().get(name)


def register(profile: Profile) -> Profile:
    """Add ``profile`` to the process-wide registry; ProfileError on a duplicate name."""
    return builtin_registry().add(profile)


def register_file(path: str | Path) -> Profile:
    """Load a user's profile file into the process-wide registry."""
    return builtin_registry().add_file(path)
