"""engine/lazy.py: the packages' lazy attributes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from probret.engine.lazy import lazy_attributes


def test_a_name_is_imported_on_first_use_and_cached():
    namespace: dict = {}
    getattr_, dir_ = lazy_attributes("probret.engine", {"cache_dir": "cache"}, namespace, ["cache_dir", "x"])
    from probret.engine.cache import cache_dir

    assert getattr_("cache_dir") is cache_dir and namespace["cache_dir"] is cache_dir
    assert dir_() == ["cache_dir", "x"]
    with pytest.raises(AttributeError, match="module 'probret.engine' has no attribute 'nope'"):
        getattr_("nope")


def test_importing_the_index_package_loads_neither_the_scan_nor_the_writer():
    code = ("import sys, probret.engine.index as i; assert 'probret.engine.index.writer' not in sys.modules; "
            "i.IndexWriter; assert 'probret.engine.index.writer' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
