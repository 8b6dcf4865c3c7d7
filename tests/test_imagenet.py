"""ImageNet class names: forgiving lookups, no hard-coded rows in the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hotdog import imagenet
from hotdog.errors import HotdogError


def test_names_come_from_the_package():
    names = imagenet.class_names()
    assert len(names) == 1000 and len(set(names)) == 999  # "crane" is a bird and a machine
    assert imagenet.full_name(imagenet.class_index("hotdog")) == "hotdog, hot dog, red hot"


@pytest.mark.parametrize("name", ["hotdog", "hot dog", "Hot Dog", "HOT_DOG", "hot-dog", "hotdogs", " red hot ", "934"])
def test_hotdog_aliases(name):
    assert imagenet.class_index(name) == 934  # the fact, checked against the package


def test_lookup_by_index_and_short_names():
    i = imagenet.class_index("photocopier")
    assert i == imagenet.CHAPTER_HOTDOG_ROW  # the chapter's "hot dog" row is really a photocopier
    assert imagenet.short_name(imagenet.class_index("hotdog")) == "hotdog"
    assert imagenet.class_index(imagenet.class_index("golden retriever")) == imagenet.class_index("Golden_Retriever")


def test_unknown_and_ambiguous_names_raise_with_suggestions():
    with pytest.raises(HotdogError, match="did you mean.*hotdog"):
        imagenet.class_index("hotdgo")
    with pytest.raises(HotdogError, match="ambiguous"):
        imagenet.class_index("crane")  # a bird and a machine
    with pytest.raises(HotdogError):
        imagenet.short_name(1000)
    assert imagenet.find_class("not-hotdog") is None


def test_no_hard_coded_class_indices_in_the_package():
    """Integer literals 934/713 in code (docs may mention them) outside the one named constant."""
    root = Path(imagenet.__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        allowed = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", "") == "CHAPTER_HOTDOG_ROW" for t in node.targets)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and type(node.value) is int and node.value in (934, 713)
                    and id(node) not in allowed):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
