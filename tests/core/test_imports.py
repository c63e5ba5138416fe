"""`import tiersel` loads the decision and the send path only; the rest loads on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

NOT_AT_IMPORT = (
    "tiersel.batch",
    "tiersel.sim",
    "tiersel.replay",
    "tiersel.wrap",
    "tiersel.http",
    "tiersel.cli",
)
NOT_AT_IMPORT += ("asyncio", "yaml", "redis", "httpx2", "uvicorn", "openai", "anthropic", "fcntl")


def loaded_by(code: str) -> list[str]:
    """The modules of interest in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_AT_IMPORT)]


def test_import_tiersel_loads_nothing_optional() -> None:
    assert loaded_by("import tiersel") == []


def test_deciding_loads_no_async_or_batch_machinery() -> None:
    code = (
        "import tiersel\n"
        "call = tiersel.Call(model='kimi-k3', input_tokens=2000, max_output_tokens=200)\n"
        "tiersel.Selector(api_key='').decide(call, tiersel.Requirements(deadline_s=20))"
    )
    # The price table is YAML: reading it loads yaml, and nothing else optional.
    assert [m for m in loaded_by(code) if m.split(".")[0] != "yaml"] == []


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("TierTransport", "tiersel.wrap"),
        ("run_batch", "tiersel.batch"),
        ("requirements", "tiersel.http.context"),
    ],
)
def test_lazy_names_load_their_module_on_first_use(name: str, module: str) -> None:
    assert module in loaded_by(f"import tiersel\ntiersel.{name}")


def test_an_unknown_name_is_an_attribute_error() -> None:
    import tiersel

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tiersel.Nope  # noqa: B018
    assert "TierTransport" in dir(tiersel)


def test_the_command_line_loads_only_the_command_it_runs() -> None:
    help_only = loaded_by("from tiersel.cli import build_parser\nbuild_parser(['--help'])")
    assert help_only == ["tiersel.cli"]
    explain = loaded_by("from tiersel.cli import build_parser\nbuild_parser(['explain'])")
    assert not [
        m for m in explain if m.startswith(("tiersel.batch", "tiersel.sim", "tiersel.replay"))
    ]
    assert "tiersel.batch" in loaded_by(
        "from tiersel.cli import build_parser\nbuild_parser(['batch'])"
    )


def test_version() -> None:
    import tiersel

    done = subprocess.run(
        [sys.executable, "-m", "tiersel", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"tiersel {tiersel.__version__}"


def test_a_name_that_left_the_top_level_says_where_it_lives() -> None:
    import tiersel
    from tiersel.budget import MemoryLedger

    with pytest.raises(AttributeError, match=r"it lives in tiersel\.budget") as caught:
        tiersel.MemoryLedger  # noqa: B018
    assert "from tiersel.budget import MemoryLedger" in str(caught.value)
    assert MemoryLedger.__module__ == "tiersel.budget"
    # dir() lists the user's API, not what the package module imports for itself.
    assert set(tiersel.__all__) <= set(dir(tiersel))
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(dir(tiersel))
