"""The README is a front door that stays true: its commands parse, its links resolve, and its table
of how the code is organised names every product file."""
import os
import re
import shlex
import subprocess

from conftest import ROOT

from options import predict_parser, train_parser, validate_parser





def markdown_commands(text):
    """(script, argv) of every python / torchrun / srun command in a Markdown page's code blocks:
    the script is what runs (``train``, ``tools.download``), argv what it is given."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    for line in lines:
        for part in line.split("#")[0].split("&&"):
            words = shlex.split(part.replace("<same arguments>", ""))
            if not words or words[0] not in ("python", "torchrun", "srun"):
                continue
            if words[:2] == ["python", "-m"] and words[2].startswith("tools."):
                yield words[2], words[3:]
                continue
            script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
            if script is not None:
                yield os.path.basename(words[script])[:-3], words[script + 1:]


def parse_command(script, argv):
    """Parse ``argv`` with ``script``'s own parser (a UserError if it refuses them; files named
    need not exist)."""
    import importlib

    from options import test_parser
    parsers = {"train": train_parser, "test": test_parser, "validate": validate_parser, "predict": predict_parser}
    parser = parsers[script]() if script in parsers else importlib.import_module(script).get_args_parser()
    return parser.parse_args(argv)


def test_every_readme_command_parses():
    """The README's commands use flags and values the scripts accept (checked by their parsers)."""
    seen = set()
    for script, argv in markdown_commands(open(os.path.join(ROOT, "README.md")).read()):
        parse_command(script, argv)
        seen.add(script)
    assert {"train", "test", "predict", "tools.download", "tools.verify"} <= seen


def test_readme_is_a_front_door_whose_links_resolve():
    text = open(os.path.join(ROOT, "README.md")).read()
    links = re.findall(r"\]\(((?:docs/|DIFFERENCES)[^)#]+)", text)
    assert any(link.startswith("docs/") for link in links)
    for page in set(links) | {f"docs/{p}" for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md")}:
        assert os.path.exists(os.path.join(ROOT, page)), page
        body = open(os.path.join(ROOT, page), "rb").read().decode("utf-8", "replace") if page.endswith(".md") else ""
        for rel in re.findall(r"\]\(([^)#:]+\.(?:md|png))", body):
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), rel)), (page, rel)
        assert "issue #" not in body.lower(), page  # pages describe the code, not the project's history
    assert "issue #" not in text.lower()


def code_table(text):
    """The rows of the README's "How the code is organised" table: (where, what)."""
    section = text.split("\n## How the code is organised", 1)[1].split("\n## ", 1)[0]
    return [tuple(cell.strip() for cell in line.strip("|").split("|", 1)) for line in section.splitlines()
            if line.startswith("| `")]


def unnamed(rows, files):
    """The product files that ``rows`` do not name: a file at the top in the first column, a file in a
    folder in the row whose first column names the folder."""
    missing = []
    for path in files:
        folder, name = os.path.split(path)
        if not any(f"`{name}`" in (where if not folder else what) and (not folder or f"`{folder}/`" in where)
                   for where, what in rows):
            missing.append(path)
    return missing


PRODUCT_FILES = [f for f in subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.split()
                 if not f.startswith("tests/") and os.path.basename(f) != "__init__.py"]


def test_the_code_table_names_every_product_file_and_fails_without_one():
    rows = code_table(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    assert len(PRODUCT_FILES) > 40 and not unnamed(rows, PRODUCT_FILES)
    for path in PRODUCT_FILES:  # the check itself: a file taken out of the table is missed
        name = f"`{os.path.basename(path)}`"
        cut = [(where.replace(name, "") if "/" not in path else where,
                what.replace(name, "") if "/" in path else what) for where, what in rows]
        assert path in unnamed(cut, PRODUCT_FILES), path
