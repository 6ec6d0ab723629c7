"""Planning a launch: ranks, the launcher's argv, output and resume checks; a dry run writes nothing."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from tests.helpers import HEAVY_LIBRARIES, SAMPLE_DATA
from yayi_cli.cli.app import app
from yayi_cli.core.reader import sha256_of
from yayi_cli.core.record_files import load_records
from yayi_cli.models.tokenizers import context_length, load_tokenizer, saved_context_length
from yayi_cli.runtime.errors import DataError, UsageError
from yayi_cli.train import environment
from yayi_cli.train.adapters import DEFAULT_TARGETS
from yayi_cli.train.checkpoints import resolve_resume, universal_conversion
from yayi_cli.train.launch import TrainResult, train, write_run_files
from yayi_cli.train.options import TrainOptions
from yayi_cli.train.plan import absolute_paths, check_data, check_output, launcher_command, plan_launch
from yayi_cli.train.ranks import Ranks, plan_ranks, select_ranks
from yayi_cli.train.supervise import failed_machine


RUN = Path("/runs/a/run.json")


def options(**values) -> TrainOptions:
    return TrainOptions(**({"data": ["d.jsonl"], "model": "m", "output": "out"} | values))


def test_a_single_machine_launch_names_the_gpus_the_worker_and_the_run_file():
    command = launcher_command(options(gpus=8), Ranks({"localhost": list(range(8))}, ("--num_gpus", "8")), RUN)
    assert Path(command[0]).name == "deepspeed" or command[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert command[-6:] == ["--num_gpus", "8", "--module", "yayi_cli.train.worker", "--run-config", str(RUN)]


def test_a_multi_machine_launch_passes_the_hostfile_nodes_and_master(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two machines\nworker-1 slots=8\nworker-2 slots=8\n", encoding="utf-8")
    chosen = options(hostfile=str(hostfile), num_nodes=2, master_addr="worker-1", master_port=29600)
    ranks = plan_ranks(chosen, [], dry_run=False)
    assert ranks.world_size == 16 and ranks.num_nodes == 2
    command = launcher_command(chosen, ranks, RUN)
    assert command[command.index("--hostfile") + 1] == str(hostfile)
    expected = ["--num_nodes", "2", "--master_addr", "worker-1", "--master_port", "29600"]
    assert command[command.index("--num_nodes"):command.index("--module")] == expected


@pytest.mark.parametrize(("selection", "world_size"), [
    ({"num_nodes": 1}, 8), ({"gpus": 4}, 8), ({"include": "worker-1:0,1@worker-2:3"}, 3),
])
def test_ranks_follow_the_launchers_selection_rules(tmp_path, selection, world_size):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-1 slots=8\nworker-2 slots=8\n", encoding="utf-8")
    assert plan_ranks(options(hostfile=str(hostfile), **selection), [], dry_run=False).world_size == world_size


def test_include_is_passed_on_instead_of_a_gpu_count(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-1 slots=8\n", encoding="utf-8")
    chosen = options(hostfile=str(hostfile), include="worker-1:0,1")
    command = launcher_command(chosen, plan_ranks(chosen, [], dry_run=False), RUN)
    assert command[command.index("--include") + 1] == "worker-1:0,1" and "--num_gpus" not in command


def test_hosts_with_different_slots_get_their_own_counts_and_gpus_cannot_exceed_the_smallest(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-1 slots=4\nworker-2 slots=2\n", encoding="utf-8")
    ranks = plan_ranks(options(hostfile=str(hostfile)), [], dry_run=False)
    assert ranks.world_size == 6 and "--num_gpus" not in ranks.selection  # the launcher reads the slots itself
    assert plan_ranks(options(hostfile=str(hostfile), gpus=2), [], dry_run=False).world_size == 4
    with pytest.raises(UsageError, match="--gpus 8, but a host has only 2 slot"):
        plan_ranks(options(hostfile=str(hostfile), gpus=8), [], dry_run=False)
    with pytest.raises(UsageError, match="--num-nodes 3, but the hostfile lists 2 host"):
        plan_ranks(options(hostfile=str(hostfile), num_nodes=3), [], dry_run=False)


def test_too_many_gpus_are_refused_with_the_slots_of_the_hosts_selected_not_of_the_whole_hostfile():
    with pytest.raises(UsageError, match=r"--gpus 2, but a host has only 1 slot\(s\)"):
        select_ranks({"worker-1": 8, "worker-2": 8}, options(gpus=2), "worker-1:0@worker-2:0,1,2")


@pytest.mark.parametrize(("chosen", "message"), [
    ({"include": "localhost:0", "num_nodes": 1}, "cannot be combined"),
    ({"include": "worker-1:0"}, "without --hostfile only localhost"),
    ({"include": "localhost:a", "cpu": True}, "e.g. localhost:0,1"),
])
def test_include_mistakes_are_refused_with_the_format(chosen, message):
    with pytest.raises(UsageError, match=message):
        plan_ranks(options(**chosen), [], dry_run=False)


def test_a_dry_run_with_include_works_on_a_machine_without_gpus(monkeypatch):
    monkeypatch.setattr("yayi_cli.train.ranks.count_local_gpus", lambda: 0)
    ranks = plan_ranks(options(include="localhost:0,1"), [], dry_run=True)
    assert ranks.world_size == 2 and ranks.selection == ("--include", "localhost:0,1")


def test_cuda_visible_devices_keeps_choosing_the_gpus(monkeypatch):
    monkeypatch.setattr("yayi_cli.train.ranks.count_local_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    ranks = plan_ranks(options(gpus=1), [], dry_run=False)
    assert ranks.world_size == 1 and ranks.selection == ()  # no --num_gpus: the launcher honours the variable
    assert environment.child_environment(options(gpus=1))["CUDA_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize(("text", "message"), [("worker-1 8\n", "lines look like"), ("", "empty"),
                                               ("worker-1 slots=0\n", "slots=1 or more")])
def test_a_bad_hostfile_is_refused_with_its_expected_format(tmp_path, text, message):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        plan_ranks(options(hostfile=str(hostfile)), [], dry_run=False)


def test_no_gpu_without_cpu_is_refused_but_a_dry_run_only_warns(monkeypatch):
    monkeypatch.setattr("yayi_cli.train.ranks.count_local_gpus", lambda: 0)
    with pytest.raises(UsageError, match="no GPU found.*--cpu"):
        plan_ranks(options(), [], dry_run=False)
    warnings: list[str] = []
    assert plan_ranks(options(gpus=8), warnings, dry_run=True).world_size == 8
    assert "no GPU found" in warnings[0]


def test_more_gpus_than_present_is_refused(monkeypatch):
    monkeypatch.setattr("yayi_cli.train.ranks.count_local_gpus", lambda: 4)
    with pytest.raises(UsageError, match="--gpus 8, but this machine has 4 GPU"):
        plan_ranks(options(gpus=8), [], dry_run=False)
    assert plan_ranks(options(), [], dry_run=False).world_size == 4  # default: all of them


def test_cpu_ranks_need_no_gpu():
    assert plan_ranks(options(cpu=True, gpus=2), [], dry_run=False).world_size == 2


def test_an_output_holding_anything_needs_resume_or_force(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(UsageError, match="not empty; add --resume auto.*or --force"):
        check_output(options(output=str(tmp_path)))
    check_output(options(output=str(tmp_path), resume="auto"))
    check_output(options(output=str(tmp_path), force=True))
    with pytest.raises(UsageError, match="is a file"):
        check_output(options(output=str(SAMPLE_DATA)))


def write_checkpoint(output: Path, step: int, *, complete: bool = True, shards: int = 0) -> Path:
    checkpoint = output / f"checkpoint-{step}"
    (checkpoint / f"global_step{step}").mkdir(parents=True)
    for rank in range(shards):
        (checkpoint / f"global_step{step}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    if complete:
        (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    return checkpoint


def test_resume_auto_takes_the_newest_complete_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 20)
    write_checkpoint(tmp_path, 30, complete=False)  # the save that Ctrl-C cut short
    warnings: list[str] = []
    assert resolve_resume(options(output=str(tmp_path), resume="auto"), warnings) == tmp_path / "checkpoint-20"
    assert "checkpoint-30 was not written to the end" in warnings[0]


def test_resume_auto_without_checkpoints_starts_from_the_model(tmp_path):
    warnings: list[str] = []
    assert resolve_resume(options(output=str(tmp_path), resume="auto"), warnings) is None
    assert "starting from the model" in warnings[0]


def test_zero_state_of_another_number_of_ranks_is_converted_at_zero_1_and_2_and_refused_otherwise(tmp_path):
    checkpoint = write_checkpoint(tmp_path, 10, shards=2)
    assert resolve_resume(options(resume=str(checkpoint)), []) == checkpoint
    warnings: list[str] = []
    assert universal_conversion(checkpoint, 2, {"zero_optimization": {"stage": 2}}, options(), warnings) is None
    assert universal_conversion(checkpoint, 4, {"zero_optimization": {"stage": 2}}, options(), warnings) == 2
    assert "written by 2 rank(s) and this launch has 4: it will be converted" in warnings[0]
    with pytest.raises(UsageError, match="split over 2 rank.*this launch has 4.*not ZeRO-3.*--model .*checkpoint-10"):
        universal_conversion(checkpoint, 4, {"zero_optimization": {"stage": 3}}, options(), [])
    with pytest.raises(UsageError, match="not lora adapters"):
        universal_conversion(checkpoint, 4, {"zero_optimization": {"stage": 2}}, options(lora=True), [])
    with pytest.raises(UsageError, match='add {"checkpoint": {"load_universal": true}} to --deepspeed'):
        universal_conversion(checkpoint, 4, {"zero_optimization": {"stage": 2}}, options(deepspeed="z.json"), [])
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        resolve_resume(options(resume=str(write_checkpoint(tmp_path, 11, complete=False))), [])


def test_invalid_data_is_refused_before_launch_pointing_at_validate(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "ok"}\n{"instruction": "", "output": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"--data: 1 invalid record\(s\), the first at .*bad.jsonl:2.*yayi data validate"):
        check_data([str(bad)], "--data", "sft", [])
    with pytest.raises(UsageError, match="no such file"):
        check_data([str(tmp_path / "missing.jsonl")], "--data", "sft", [])
    with pytest.raises(UsageError, match="is a directory"):
        check_data([str(tmp_path)], "--data", "sft", [])


def test_force_moves_the_previous_run_aside_instead_of_deleting_it(tmp_path, tiny_model_dirs):
    output = tmp_path / "out"
    old = write_checkpoint(output, 7)
    plan = plan_launch(options(data=[str(SAMPLE_DATA)], model=str(tiny_model_dirs["llama"]),
                                      output=str(output), cpu=True, force=True), dry_run=False)
    kept = write_run_files(plan)
    assert (kept / old.name / "trainer_state.json").is_file()
    assert sorted(p.name for p in output.iterdir()) == ["ds_config.json", "run.json", "runs"]
    run = json.loads((output / "run.json").read_text(encoding="utf-8"))
    assert run["options"]["model"] == str(tiny_model_dirs["llama"]) and run["world_size"] == 1
    assert run["data"][0]["sha256"] and run["versions"]["deepspeed"]


def test_planning_leaves_the_options_it_is_given_as_they_were_and_the_plan_cannot_change(tiny_model_dirs, tmp_path):
    chosen = options(data=[str(SAMPLE_DATA)], model=str(tiny_model_dirs["llama"]), output=str(tmp_path / "run"), cpu=True,
                     gpus=2, micro_batch_size=2, global_batch_size=8, lora=True)
    before = copy.deepcopy(chosen)
    plan = plan_launch(chosen, dry_run=True)
    assert chosen == before
    assert (plan.gradient_accumulation_steps, plan.options.gradient_accumulation_steps) == (2, 2)
    assert plan.weights == "lora" and plan.options.lora_targets == list(DEFAULT_TARGETS["llama"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.precision = "fp16"


def test_train_as_a_library_call_plans_a_dry_run_and_writes_nothing(tiny_model_dirs, tmp_path):
    output, shown = tmp_path / "run", []
    result = train(options(data=[str(SAMPLE_DATA)], model=str(tiny_model_dirs["llama"]), output=str(output), cpu=True),
                   dry_run=True, before_launch=shown.append)
    assert result.status is None and shown == [] and not output.exists()
    assert result.to_json()["command"] == result.plan.command and result.notes() == []
    with pytest.raises(UsageError, match="missing --output"):
        train(options(output=""), dry_run=True)


def test_the_end_of_a_run_says_where_the_old_output_went_and_where_to_continue_from(tiny_model_dirs, tmp_path):
    output = tmp_path / "run"
    plan = plan_launch(options(data=[str(SAMPLE_DATA)], model=str(tiny_model_dirs["llama"]), output=str(output), cpu=True),
                       dry_run=False)
    kept = tmp_path / "run.replaced-1"
    assert TrainResult(plan, 130, kept).notes() == [
        f"moved the previous contents of {output} to {kept}", "interrupted: all ranks stopped before the first complete checkpoint",
    ]
    write_checkpoint(output, 4)
    assert TrainResult(plan, 130).notes() == [
        f"interrupted: all ranks stopped; {output / 'checkpoint-4'} is complete: continue from it with --resume auto",
    ]
    assert TrainResult(plan, 0).notes() == []


def test_a_dry_run_prints_the_plan_as_json_and_writes_nothing(tmp_path, tiny_model_dirs):
    output = tmp_path / "never-created"
    result = CliRunner().invoke(app, [
        "train", "--dry-run", "--json", "--data-path", str(SAMPLE_DATA), "--input-model", str(tiny_model_dirs["bloom"]),
        "--local-output-dir", str(output), "--gpus", "8", "--zero", "3", "--per-device-train-batch-size", "2",
        "--global-batch-size", "64",
    ])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert not output.exists()
    assert plan["world_size"] == 8 and plan["global_batch_size"] == 64
    assert plan["run"]["gradient_accumulation_steps"] == 4
    assert plan["deepspeed_config"]["zero_optimization"]["stage"] == 3
    assert plan["command"][-2:] == ["--run-config", str(output.resolve() / "run.json")]
    assert plan["memory"]["parameters"] == AutoModelForCausalLM.from_pretrained(tiny_model_dirs["bloom"]).num_parameters()
    assert any("no GPU found" in warning for warning in plan["warnings"])


def test_resume_auto_never_trains_over_a_directory_without_checkpoints(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(UsageError, match="no complete checkpoint to continue from.*--force"):
        resolve_resume(options(output=str(tmp_path), resume="auto"), [])


@pytest.mark.parametrize("spelling", ["{model}", "{model}/../{name}/.", "{model}/.."])
def test_training_into_the_model_directory_or_above_it_is_refused(tiny_model_dirs, spelling):
    model = tiny_model_dirs["llama"]
    output = spelling.format(model=model, name=model.name)
    with pytest.raises(UsageError, match="would replace --model"):
        plan_launch(options(data=[str(SAMPLE_DATA)], model=str(model), output=output, cpu=True, force=True),
                           dry_run=True)


def test_no_records_or_no_records_left_after_test_size_is_refused_before_launch(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no records"):
        check_data([str(empty)], "--data", "sft", [])
    records = len(load_records([SAMPLE_DATA]))
    with pytest.raises(UsageError, match=f"asks for {records} test records out of {records} usable ones"):
        check_data([str(SAMPLE_DATA)], "--data", "sft", [], test_size=records)


def test_a_tilde_in_a_path_means_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    chosen = absolute_paths(options(data=["~/train.jsonl"], output="~/run"))
    assert chosen.data == [str(tmp_path / "train.jsonl")] and chosen.output == str(tmp_path / "run")


def two_machines(tmp_path) -> str:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-1 slots=1\nworker-2 slots=1\n", encoding="utf-8")
    return str(hostfile)


def test_every_machine_gets_the_interface_the_python_environment_and_the_offline_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/models/hf")
    monkeypatch.delenv("DS_ENV_FILE", raising=False)
    env = environment.node_environment(options(cpu=True, network_interface="eth1"))
    assert env["PATH"].split(":")[0] == str(Path(environment.sys.executable).parent)
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "eth1"
    assert env["DS_ACCELERATOR"] == "cpu" and env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/models/hf"


def test_the_users_own_deepspeed_env_is_carried_over_and_the_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DS_ENV_FILE", raising=False)
    (tmp_path / ".deepspeed_env").write_text("NCCL_IB_HCA=mlx5\n\nGLOO_SOCKET_IFNAME=eth0\n", encoding="utf-8")
    env = environment.node_environment(options(network_interface="ib0"))
    assert env["NCCL_IB_HCA"] == "mlx5" and env["GLOO_SOCKET_IFNAME"] == "ib0"


def test_a_value_the_runner_cannot_quote_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HOME", "/models/$USER")
    with pytest.raises(UsageError, match="HF_HOME=.*cannot pass"):
        environment.node_environment(options())


def test_the_launcher_reads_yayis_environment_file_not_the_users_home(tmp_path):
    env = environment.child_environment(options(network_interface="eth1"), tmp_path / "deepspeed_env")
    assert env["DS_ENV_FILE"] == str(tmp_path / "deepspeed_env") and env["GLOO_SOCKET_IFNAME"] == "eth1"
    assert "DS_ENV_FILE" not in environment.child_environment(options())


def test_a_loopback_host_name_on_several_machines_is_warned_about_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(environment.socket, "gethostbyname", lambda name: "127.0.1.1")
    chosen = options(hostfile=two_machines(tmp_path))
    ranks = plan_ranks(chosen, [], dry_run=False)
    assert "resolves to 127.0.1.1, a loopback address" in environment.loopback_warning(chosen, ranks)
    assert "--network-interface IFACE" in environment.loopback_warning(chosen, ranks)
    assert environment.loopback_warning(options(hostfile=chosen.hostfile, network_interface="eth0"), ranks) is None
    assert environment.loopback_warning(options(cpu=True), plan_ranks(options(cpu=True), [], dry_run=False)) is None
    monkeypatch.setattr(environment.socket, "gethostbyname", lambda name: "10.0.0.5")
    assert environment.loopback_warning(chosen, ranks) is None


def test_a_dry_run_on_several_machines_shows_every_variable_they_get(tmp_path, tiny_model_dirs):
    output = tmp_path / "never-created"
    arguments = ["train", "--dry-run", "--data", str(SAMPLE_DATA), "--model", str(tiny_model_dirs["llama"]), "-o",
                 str(output), "--cpu", "--hostfile", two_machines(tmp_path), "--network-interface", "eth1"]
    plan = json.loads(CliRunner().invoke(app, [*arguments, "--json"]).stdout)
    assert plan["node_environment"]["GLOO_SOCKET_IFNAME"] == "eth1" and "PATH" in plan["node_environment"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for name, value in plan["node_environment"].items():
        assert f"{name}={value}" in result.output
    assert not output.exists()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--network-interface", "eth0; rm"], "--network-interface 'eth0; rm': give an interface name"),
    (["--dist-timeout", "0"], "--dist-timeout must be at least 1"),
])
def test_bad_network_options_are_one_error_line(arguments, message):
    result = CliRunner().invoke(app, ["train", "--data", str(SAMPLE_DATA), "--model", "m", "-o", "out", *arguments])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_machine_that_failed_is_read_from_pdshs_line():
    assert failed_machine("pdsh@node1: 10.0.0.3: ssh exited with exit code 255\n") == "10.0.0.3"
    assert failed_machine("10.0.0.3: ssh: connect to host 10.0.0.3 port 22: No route to host") is None


def test_planning_a_local_run_imports_no_heavy_library(tiny_model_dirs, tmp_path):
    """The ranks import them anyway: importing them first in the launcher only delays the first step."""
    chosen = options(data=[str(SAMPLE_DATA)], model=str(tiny_model_dirs["llama"]), output=str(tmp_path / "run"), cpu=True)
    code = ("import sys; from yayi_cli.train.plan import plan_launch; from yayi_cli.train.options import TrainOptions\n"
            f"plan = plan_launch(TrainOptions(**{chosen.to_json()!r}), dry_run=False)\n"
            f"print(plan.max_length, plan.memory.parameters, [m for m in {HEAVY_LIBRARIES!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tokenizer = load_tokenizer(str(tiny_model_dirs["llama"]))
    parameters = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).num_parameters()
    assert result.stdout.split() == [str(tokenizer.model_max_length), str(parameters), "[]"]


@pytest.mark.parametrize("saved_limit", [True, False])
def test_a_local_models_context_length_is_read_from_its_files_as_from_the_loaded_tokenizer(tiny_model_dirs, arch,
                                                                                          tmp_path, saved_limit):
    model = tmp_path / arch
    shutil.copytree(tiny_model_dirs[arch], model)
    if not saved_limit:  # then the config's limit counts
        settings = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
        settings.pop("model_max_length")
        (model / "tokenizer_config.json").write_text(json.dumps(settings), encoding="utf-8")
    assert saved_context_length(model) == context_length(str(model), load_tokenizer(str(model)))


def test_a_local_model_without_a_tokenizer_is_refused_before_anything_is_launched(tiny_model_dirs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], model)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    chosen = options(data=[str(SAMPLE_DATA)], model=str(model), output=str(tmp_path / "run"), cpu=True)
    with pytest.raises(UsageError, match="no tokenizer in this directory"):
        plan_launch(chosen, dry_run=False)
    assert not (tmp_path / "run").exists()



def launched(output: Path, model: Path, **values) -> None:
    """A launch planned and its run files written, as `yayi train` does before it starts the ranks."""
    chosen = options(**({"data": [str(SAMPLE_DATA)], "model": str(model), "output": str(output), "cpu": True} | values))
    write_run_files(plan_launch(chosen, dry_run=False))


def resume(output: Path, model: Path, *flags: str, data: Path = SAMPLE_DATA):
    """`yayi train --dry-run --resume auto` into `output` (planning alone: what it refuses, it refuses the same)."""
    return CliRunner().invoke(app, ["train", "--dry-run", "--json", "--cpu", "--data", str(data), "--model", str(model),
                                    "-o", str(output), "--resume", "auto", *flags])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_every_launch_keeps_its_record_and_run_json_is_the_latest(tmp_path, tiny_model_dirs):
    output, model = tmp_path / "out", tiny_model_dirs["llama"]
    launched(output, model, max_steps=2)
    write_checkpoint(output, 2)
    launched(output, model, max_steps=4, resume="auto")
    records = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in (output / "runs").iterdir()}
    assert sorted(records) == ["run-1.json", "run-2.json"]
    first, second = records["run-1.json"], records["run-2.json"]
    assert (first["launch"], first["options"]["max_steps"], first["resume_from"]) == (1, 2, None)
    assert (second["launch"], second["options"]["max_steps"], second["resume_from"]) == (2, 4, str(output / "checkpoint-2"))
    assert json.loads((output / "run.json").read_text(encoding="utf-8")) == second


@pytest.mark.parametrize(("first", "flags", "listed"), [
    ({"seed": 1}, ["--seed", "2"], "seed 1 -> 2"),
    ({"test_size": 4}, ["--test-size", "3"], "test-size 4 -> 3"),
    ({"max_length": 128}, ["--max-length", "64", "--packing"], "max-length 128 -> 64, packing False -> True"),
    ({}, ["--lora"], "adapter None -> lora"),
    ({"lora": True}, ["--lora", "--lora-r", "8", "--lora-dropout", "0"],
     "lora-r 16 -> 8, lora-alpha 32 -> 16, lora-dropout 0.05 -> 0.0"),
])
def test_resume_auto_refuses_a_run_on_another_data_stream_or_model_in_one_line(tmp_path, tiny_model_dirs, first, flags,
                                                                                listed):
    output, model = tmp_path / "out", tiny_model_dirs["llama"]
    launched(output, model, **first)
    write_checkpoint(output, 2)
    refused = resume(output, model, *flags)
    assert refused.exit_code == 2 and refused.stdout == ""
    assert error_lines(refused) == [f"error: --resume auto: this run differs from the one it continues (checkpoint-2): "
                                    f"{listed}; use --force to continue anyway, or a new --output to start a new run"]
    forced = resume(output, model, *flags, "--force")
    assert forced.exit_code == 0, forced.output
    assert any(listed in warning for warning in json.loads(forced.stdout)["warnings"])


def test_changed_data_is_named_by_its_hashes(tmp_path, tiny_model_dirs):
    output, model, data = tmp_path / "out", tiny_model_dirs["llama"], tmp_path / "train.jsonl"
    shutil.copyfile(SAMPLE_DATA, data)
    launched(output, model, data=[str(data)])
    write_checkpoint(output, 2)
    before = sha256_of(data)
    with data.open("a", encoding="utf-8") as more:
        more.write('{"instruction": "one more", "output": "record"}\n')
    refused = resume(output, model, data=data)
    assert f"data sha256 {before[:12]} -> {sha256_of(data)[:12]};" in error_lines(refused)[0]


@pytest.mark.parametrize(("first", "flags", "listed"), [
    ({"method": "dpo"}, ["--method", "kto"], "method dpo -> kto"),
    ({"method": "dpo"}, ["--method", "dpo", "--beta", "0.5"], "beta 0.1 -> 0.5"),
    ({"method": "dpo"}, ["--method", "dpo", "--dpo-loss", "ipo"], "dpo-loss sigmoid -> ipo"),
    ({"method": "dpo"}, ["--method", "dpo", "--sft-weight", "1"], "sft-weight 0.0 -> 1.0"),
])
def test_resume_auto_refuses_another_method_or_objective_in_one_line(tmp_path, tiny_model_dirs, pairs_file, first, flags,
                                                                       listed):
    output, model = tmp_path / "out", tiny_model_dirs["llama"]
    launched(output, model, data=[str(pairs_file)], **first)
    write_checkpoint(output, 2)
    refused = resume(output, model, *flags, data=pairs_file)
    assert refused.exit_code == 2 and refused.stdout == ""
    assert error_lines(refused) == [f"error: --resume auto: this run differs from the one it continues (checkpoint-2): "
                                    f"{listed}; use --force to continue anyway, or a new --output to start a new run"]
    assert resume(output, model, "--method", "dpo", data=pairs_file).exit_code == 0  # the same method goes on


def test_steps_logging_saving_and_the_number_of_ranks_may_change_on_resume(tmp_path, tiny_model_dirs):
    output, model = tmp_path / "out", tiny_model_dirs["llama"]
    launched(output, model, max_steps=2, gpus=2)
    write_checkpoint(output, 2)
    result = resume(output, model, "--max-steps", "10", "--gpus", "1", "--micro-batch-size", "2", "--logging-steps", "1",
                    "--save-steps", "3", "--lr", "1e-5")
    assert result.exit_code == 0, result.output
    assert not any("differs" in warning for warning in json.loads(result.stdout)["warnings"])


def test_the_checkpoints_own_record_decides_not_a_later_launchs(tmp_path, tiny_model_dirs):
    """A later launch (forced onto other settings, say, then stopped before its first save) does not make the
    checkpoint look as if it had been saved by that launch."""
    output, model = tmp_path / "out", tiny_model_dirs["llama"]
    launched(output, model, seed=1)
    checkpoint = write_checkpoint(output, 2)
    shutil.copyfile(output / "run.json", checkpoint / "run.json")  # what the worker does on each save
    launched(output, model, seed=2, resume="auto", force=True)
    assert "seed 1 -> 2" in error_lines(resume(output, model, "--seed", "2"))[0]
    assert resume(output, model, "--seed", "1").exit_code == 0
