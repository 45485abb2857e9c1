"""Per-rule conda environments stay consistent with the pinned versions the tests run with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


CONSTRAINTS = pins(REPO / "constraints.txt")
ENVS = sorted((REPO / "envs").glob("*.yaml"))


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_match_constraints(env):
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip, f"{env.name} lists no pip packages"
    for req in pip:
        name, _, ver = req.partition("==")
        assert ver, f"{env.name}: {req!r} is not pinned with =="
        key = name.lower().replace("_", "-")
        assert key in CONSTRAINTS, f"{env.name}: {name} is not in constraints.txt"
        assert CONSTRAINTS[key] == ver, (
            f"{env.name}: {name}=={ver} but constraints.txt has {CONSTRAINTS[key]}"
        )
    assert "python=3.11" in spec["dependencies"]


def test_every_rule_names_an_existing_env():
    rules_dir = REPO / "workflow" / "rules"
    seen = 0
    for smk in rules_dir.glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text())[1:]:
            name = block.split(":")[0].removeprefix("rule ").strip()
            m = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
            assert m, f"rule {name} in {smk.name} has no conda: env"
            assert (rules_dir / m.group(1)).resolve().is_file(), (
                f"rule {name}: {m.group(1)} missing"
            )
            seen += 1
    assert seen >= 4


def test_torch_is_pinned_to_the_cpu_wheel():
    assert CONSTRAINTS["torch"] == "2.13.0"
