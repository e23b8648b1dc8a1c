"""The command line's own parsing: ``musicrec stage --param NAME=VALUE``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from musicrec.cli import StageError, notebook_parameters, parse_param

AB_NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_ab_test.ipynb"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max_users=20000", ("max_users", 20000)),
        ("max_users=null", ("max_users", None)),
        ("seed = 7", ("seed", 7)),
        (
            "experiment={name: x, variants: [{name: a, share: 1}]}",
            ("experiment", {"name": "x", "variants": [{"name": "a", "share": 1}]}),
        ),
        ("note=a=b", ("note", "a=b")),  # only the first '=' splits
    ],
)
def test_parse_param_reads_the_value_as_yaml(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["max_users", "=3", "2x=3", "k={unclosed"])
def test_parse_param_refuses_what_is_not_name_equals_value(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=VALUE|not valid YAML"):
        parse_param(text)


def test_notebook_parameters_are_checked_against_the_parameters_cell():
    assert notebook_parameters(AB_NOTEBOOK, {"max_users": None, "k": 5}) == {"max_users": None, "k": 5}
    with pytest.raises(
        StageError,
        match=r"max_user: not a parameter of 06_ab_test.ipynb \(its parameters: "
        r"experiment, k, max_users, seed\)",
    ):
        notebook_parameters(AB_NOTEBOOK, {"max_user": 3})
    with pytest.raises(StageError, match="root: set these with --params, --data-path, --engine and --root"):
        notebook_parameters(AB_NOTEBOOK, {"root": "/elsewhere"})
