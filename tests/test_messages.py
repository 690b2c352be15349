"""Advice the project gives works when followed: every ``--flag`` that a message, help text or
docstring of the product names is an option of one of the scripts, and every command it quotes parses."""
import ast
import glob
import importlib
import os
import re
import shlex

from conftest import ROOT

from options import (parse_predict_args, parse_test_args, parse_train_args, parse_validate_args, predict_parser,
                     train_parser, validate_parser)
from options import test_parser as eval_parser  # not named test_*: pytest would collect it


# Flags of other programs that messages name: pytest, torchrun, git.
OTHER_PROGRAMS = {"junitxml", "nproc_per_node", "nnodes", "node_rank", "rdzv_backend", "rdzv_endpoint", "rdzv_id",
                  "standalone", "short", "help"}


PARSERS = {"train": train_parser, "test": eval_parser, "validate": validate_parser, "predict": predict_parser}


PARSE = {"train": parse_train_args, "test": parse_test_args, "validate": parse_validate_args,
         "predict": parse_predict_args}  # with their presets and checks


def product_strings():
    """(file, text) of every string constant in the product's Python files (f-strings: their
    literal parts joined)."""
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py"))):
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(("tests" + os.sep, ".")):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.JoinedStr):
                yield rel, "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield rel, node.value


def parser_of(script):
    if script in PARSERS:
        return PARSERS[script]()
    return importlib.import_module(script).get_args_parser()


def every_option():
    options = set()
    for script in [*PARSERS, "bench", "gpu_check", "tools.download", "tools.verify", "tools.mini"]:
        options |= {o.lstrip("-") for a in parser_of(script)._actions for o in a.option_strings}
    return options | {o.lstrip("-") for a in importlib.import_module("demo").get_args_parser()._actions
                      for o in a.option_strings}


def test_every_flag_a_message_names_exists():
    options = every_option() | OTHER_PROGRAMS
    unknown = sorted({(f, flag) for f, text in product_strings()
                      for flag in re.findall(r"(?<![\w-])--([a-z][A-Za-z_0-9]*)", text) if flag not in options})
    assert not unknown, unknown


def test_every_command_a_message_quotes_parses():
    seen = 0
    for _, text in product_strings():
        for cmd in re.findall(r"`(python (?:-m )?[\w./]+[^`]*)`", text):
            words = shlex.split(cmd.replace("X", "x"))
            script = words[2] if words[1] == "-m" else words[1][:-3]
            if script.split(".")[0] not in ("tools", *PARSERS, "bench", "gpu_check", "demo"):
                continue
            args = [w for w in words[3 if words[1] == "-m" else 2:] if w != "..."]
            PARSE[script](args) if script in PARSE else parser_of(script).parse_args(args)
            seen += 1
    assert seen >= 3
