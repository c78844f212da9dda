"""The default thread count: physical cores within the process's affinity."""

from __future__ import annotations

from pathlib import Path

from server.engine.llama.cpu import allowed_cpus, physical_cores


def fake_sys(tmp_path: Path, siblings: dict[int, str]) -> Path:
    for cpu, text in siblings.items():
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "thread_siblings_list").write_text(text + "\n")
    return tmp_path


def test_hyperthreads_of_one_core_count_once(tmp_path: Path) -> None:
    sys_cpu = fake_sys(tmp_path, {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    assert physical_cores([0, 1, 2, 3], sys_cpu=sys_cpu) == 2


def test_only_the_cpus_the_process_may_use_count(tmp_path: Path) -> None:
    sys_cpu = fake_sys(tmp_path, {i: f"{i}" for i in range(8)})
    assert physical_cores([2, 5], sys_cpu=sys_cpu) == 2


def test_without_topology_every_logical_cpu_counts(tmp_path: Path) -> None:
    assert physical_cores([0, 1, 2], sys_cpu=tmp_path) == 3


def test_this_machine_has_at_least_one_core_and_no_more_than_its_cpus() -> None:
    assert 1 <= physical_cores() <= len(allowed_cpus())
