"""Name -> parser class registries that a server flag picks from and plugin files add to
(`--tool-call-parser` / `--tool-parser-plugin`, `--reasoning-parser` / `--reasoning-parser-plugin`)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import ClassVar


class ParserRegistry:
    """One registry per subclass: `base` is the class every entry must extend, `kind` names it in errors."""

    base: ClassVar[type]
    kind: ClassVar[str]
    _parsers: ClassVar[dict[str, type]]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._parsers = {}

    @classmethod
    def register(cls, name: str):
        """Class decorator; a later registration of a name replaces the earlier (a plugin may override)."""
        def add(parser: type) -> type:
            if not (isinstance(parser, type) and issubclass(parser, cls.base)):
                raise TypeError(f"{cls.kind} {name!r} must be a {cls.base.__name__} subclass, got {parser!r}")
            cls._parsers[name] = parser
            return parser
        return add

    @classmethod
    def get(cls, name: str) -> type:
        try:
            return cls._parsers[name]
        except KeyError:
            raise ValueError(f"unknown {cls.kind} {name!r}; known: {', '.join(cls.names())}") from None

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._parsers)

    @classmethod
    def import_plugin(cls, path: str | Path) -> None:
        """Execute a user's Python file; the classes it registers become available."""
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{cls.kind} plugin {str(path)!r} is not a file")
        module_name = f"octavo_{cls.kind.replace(' ', '_')}_plugin_{file.stem}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
