"""Shared fixtures (tiny BLOOM- and Llama-shaped models built offline once per test session) and the suite's
guards: the tiers, the time limit of an unmarked test, and no process left running by a test or the session."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.helpers import PAIRS, SAMPLE_DATA, STARTED, end_processes, processes_using, tree, write_jsonl
from yayi_cli.core.prompt import TEMPLATES
from yayi_cli.models.tiny import ARCHITECTURES, TinySpec, build_tiny, training_texts


TIERS = ("launch", "system", "reference")
"""What `make test-fast` leaves out (pyproject.toml says what each means); everything else is the edit loop."""

LEFT_RUNNING_GRACE = 10.0
"""Seconds a process a test started may take to end after the test (an engine that got SIGTERM, say)."""


def pytest_configure(config: pytest.Config) -> None:
    """The tests press Ctrl-C (SIGINT) on the commands they start, as a terminal does. A suite started in the
    background without job control (`nohup make test &`) inherits SIGINT ignored, and so would every command it
    starts, which then could not be stopped that way: the suite takes SIGINT back, and its children with it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("unmarked_test_seconds", "the longest an unmarked test may run (its call, not its fixtures)", default="10")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keeps each phase's report on the item (the teardown below reads it), and fails an unmarked test that ran
    too long: the edit loop stays fast only if what is slow says so."""
    report = (yield).get_result()
    setattr(item, f"report_{report.when}", report)
    limit = float(item.config.getini("unmarked_test_seconds"))
    if report.when == "call" and report.passed and report.duration > limit and not any(map(item.get_closest_marker, TIERS)):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {report.duration:.1f} s, and an unmarked test may take {limit:g} s: "
                           f"make it faster, or mark it {' / '.join(TIERS)} (pyproject.toml says which fits)")


def _still_running(pids_of) -> list[int]:
    """What `pids_of()` finds alive once the grace period is over (or at once, when it finds nothing)."""
    deadline = time.monotonic() + LEFT_RUNNING_GRACE
    while (left := pids_of()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _describe(pids: list[int]) -> str:
    lines = []
    for pid in pids:
        try:
            lines.append(f"  {pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300])
        except OSError:
            pass
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _ends_what_the_test_started(request: pytest.FixtureRequest):
    """After each test, every process it started (through tests.helpers.start, or with its tmp_path among the
    arguments) is ended with its whole tree. A test that failed or timed out is only cleaned up after; a test that
    passed and left something running fails here, naming it."""
    first = len(STARTED)
    yield
    started = STARTED[first:]
    del STARTED[first:]
    folder = request.node.funcargs.get("tmp_path")

    def left() -> list[int]:
        pids = [pid for process in started for pid in tree(process.pid)]
        return sorted(set(pids + (processes_using(folder) if folder else [])))

    passed = getattr(request.node, "report_call", None) is not None and request.node.report_call.passed
    pids = _still_running(left) if passed else left()
    if pids:
        described = _describe(pids)
        end_processes(pids)
        if passed:
            pytest.fail(f"the test left these running (ended now):\n{described}")


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running_at_the_end(tmp_path_factory: pytest.TempPathFactory):
    """The last teardown of the session: a process still running with the session's temporary folder among its
    arguments (an engine, a rank, a launcher that a module's fixture started) fails the suite."""
    yield
    base = tmp_path_factory.getbasetemp()
    pids = _still_running(lambda: processes_using(base))
    if pids:
        described = _describe(pids)
        end_processes(pids)
        pytest.fail(f"still running at the end of the session (ended now):\n{described}")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per architecture, its tokenizer trained on the sample data."""
    root = tmp_path_factory.mktemp("tiny-models")
    texts = list(training_texts([SAMPLE_DATA], TEMPLATES["yayi"]))
    return {arch: build_tiny(root / arch, texts, TinySpec(arch=arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="session", params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_tokenizers(tiny_model_dirs: dict[str, Path]) -> dict[str, object]:
    from transformers import AutoTokenizer

    return {arch: AutoTokenizer.from_pretrained(path) for arch, path in tiny_model_dirs.items()}


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizers: dict[str, object], arch: str) -> object:
    """The tiny tokenizer of each architecture in turn (Llama-style prepends BOS, BLOOM does not)."""
    return tiny_tokenizers[arch]


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests.helpers.PAIRS as a JSONL file."""
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", PAIRS)


@pytest.fixture
def without_markers(tmp_path) -> Path:
    """A Llama-shaped model whose tokenizer has never heard of the YaYi markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["hello world 你好 雅意"] * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id)
    directory = tmp_path / "plain"
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
