"""Study files: grid expansion, explicit points, validation with reasons, run order."""

import textwrap

import pytest

from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep.study import expand_grid, load_study, parse_study_text

BASE = """
base:
  model: "random:tiny"
  max_output_tokens: 4
  dataset: {n: 2}
"""


def study(text, base=BASE):
    return parse_study_text(textwrap.dedent(base) + textwrap.dedent(text), source="study.yaml")


def test_grid_is_the_cartesian_product_first_key_slowest():
    s = study("""
        sweep:
          pytorch.batch_size: [1, 2, 4]
          precision: [fp32, bf16]
    """)
    assert [p.name for p in s.points] == [
        "batch_size=1,precision=fp32", "batch_size=1,precision=bf16",
        "batch_size=2,precision=fp32", "batch_size=2,precision=bf16",
        "batch_size=4,precision=fp32", "batch_size=4,precision=bf16",
    ]  # fmt: skip
    point = s.points[3]
    assert point.config.pytorch.batch_size == 2 and point.config.precision == "bf16"
    assert point.config.max_output_tokens == 4 and point.config.dataset.n == 2  # base kept
    assert len({p.config_hash for p in s.points}) == 6
    assert s.skipped == []


def test_expand_grid_of_nothing_is_empty():
    assert expand_grid({}) == []


def test_same_leaf_name_in_two_sections_uses_full_keys():
    s = study("""
        sweep:
          decoder.top_k: [1]
          dataset.n: [1, 2]
    """)
    assert s.points[0].name == "top_k=1,n=1"
    s = study("""
        sweep:
          warmup.enabled: [true]
          baseline.enabled: [false]
    """)
    assert s.points[0].name == "warmup.enabled=True,baseline.enabled=False"


def test_invalid_points_are_skipped_with_their_reason():
    s = study("""
        sweep:
          pytorch.batch_size: [1, 0]
          decoder.temperature: [0.5, 9.0]
    """)
    assert [p.name for p in s.points] == ["batch_size=1,temperature=0.5"]
    reasons = {k.name: k.reason for k in s.skipped}
    assert set(reasons) == {"batch_size=1,temperature=9.0", "batch_size=0,temperature=0.5", "batch_size=0,temperature=9.0"}
    assert "decoder.temperature" in reasons["batch_size=1,temperature=9.0"]
    assert "pytorch.batch_size" in reasons["batch_size=0,temperature=0.5"]
    assert "\n" not in reasons["batch_size=0,temperature=9.0"]


def test_cross_field_rule_is_a_skip_reason():
    s = study("""
        sweep:
          decoder.min_new_tokens: [2, 8]
    """)
    assert [p.name for p in s.points] == ["min_new_tokens=2"]
    assert "exceeds max_output_tokens" in s.skipped[0].reason


def test_explicit_experiments_merge_sections_and_take_names():
    s = study("""
        sweep:
          pytorch.batch_size: [1]
        experiments:
          - {name: greedy, decoder: {preset: deterministic}}
          - {decoder.top_k: 5, dataset: {shuffle: true}}
          - {pytorch.batch_size: 1}
    """)
    names = [p.name for p in s.points]
    assert names == ["batch_size=1", "greedy", "exp2:top_k=5,dataset={\"shuffle\":true}"]
    exp2 = s.points[2].config
    assert exp2.dataset.shuffle and exp2.dataset.n == 2  # merged into the base's dataset section
    assert s.points[1].config.decoder.do_sample is False
    assert s.skipped[0].name == "exp3:batch_size=1" and "same measured config as point batch_size=1" in s.skipped[0].reason


def test_base_config_path_is_relative_to_the_study(tmp_path):
    (tmp_path / "exp.yaml").write_text('model: "random:tiny"\nmax_output_tokens: 3\n')
    (tmp_path / "study.yaml").write_text("base_config: exp.yaml\nsweep:\n  random_seed: [1, 2]\n")
    s = load_study(tmp_path / "study.yaml")
    assert [p.config.random_seed for p in s.points] == [1, 2]
    assert s.points[0].config.max_output_tokens == 3
    assert s.name == "study"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sweep:\n  pytorch.batch_sise: [1]\n", 'did you mean "pytorch.batch_size"'),
        ("sweep:\n  pytorch.batch_size: 4\n", "sweep.pytorch.batch_size: must be a non-empty list"),
        ("sweep:\n  pytorch.batch_size: []\n", "sweep.pytorch.batch_size"),
        ("sweep:\n  pytorch: {batch_size: [1]}\n", "use dotted keys"),
        ("sweep:\n  max_output_tokens.x: [1]\n", "max_output_tokens is a value, not a section"),
        ("sweeps:\n  random_seed: [1]\n", "unknown study key 'sweeps' - did you mean \"sweep\""),
        ("experiments: {a: 1}\n", "experiments must be a list"),
        ("experiments:\n  - {decoder.topk: 1}\n", "experiments[1].decoder.topk"),
        ("experiments:\n  - 3\n", "experiments[1]: must be a mapping"),
        ("sweep:\n  random_seed: [1]\ncycle_order: random\n", "cycle_order is 'random'"),
        ("sweep:\n  random_seed: [1]\nrepeats: 0\n", "repeats must be an integer >= 1"),
        ("cycle_order: sequential\n", "a study needs `sweep:`"),
        ("sweep:\n  max_output_tokens: [0, -1]\n", "no valid point in the study"),
    ],
)
def test_bad_study_files_name_the_key(text, named):
    with pytest.raises(ConfigError) as err:
        study(text)
    assert named in str(err.value)
    assert "study.yaml" in str(err.value)


def test_missing_base_is_refused():
    with pytest.raises(ConfigError, match="missing base"):
        parse_study_text("sweep:\n  random_seed: [1]\n")
    with pytest.raises(ConfigError, match="not both"):
        parse_study_text("base: {model: x}\nbase_config: a.yaml\nsweep:\n  random_seed: [1]\n")


def test_dict_fields_accept_sub_keys():
    s = study("""
        sweep:
          tags.team: [a, b]
    """)
    assert [p.config.tags for p in s.points] == [{"team": "a"}]
    # tags do not change the measurement: both points have the same hash, the second is a duplicate
    assert len(s.points) == 1 and "same measured config" in s.skipped[0].reason


GRID = textwrap.dedent("""
    sweep:
      random_seed: [1, 2, 3]
    repeats: 2
""")


def order(s, **kw):
    return [(p.config.random_seed, r) for p, r in s.schedule(**kw)]


def test_sequential_runs_every_repeat_of_a_point_together():
    s = study(GRID + "cycle_order: sequential\n")
    assert order(s) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]


def test_interleaved_runs_one_round_per_repeat():
    s = study(GRID + "cycle_order: interleaved\n")
    assert order(s) == [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]


def test_shuffled_is_a_seeded_permutation_of_each_round():
    s = study(GRID + "cycle_order: shuffled\nseed: 7\n")
    runs = order(s)
    assert runs == order(study(GRID + "cycle_order: shuffled\nseed: 7\n"))  # reproducible
    assert sorted(runs) == sorted(order(study(GRID)))
    assert sorted(x for x, r in runs[:3]) == [1, 2, 3] and {r for _, r in runs[:3]} == {1}
    orders = {tuple(order(study(GRID + f"cycle_order: shuffled\nseed: {seed}\n"))) for seed in range(10)}
    assert len(orders) > 1  # the seed changes the order


def test_schedule_leaves_out_finished_runs():
    s = study(GRID + "cycle_order: interleaved\n")
    done = {s.points[0].config_hash: 2, s.points[2].config_hash: 1}
    assert order(s, done=done) == [(2, 1), (2, 2), (3, 2)]  # point 3's first repeat is done


def test_study_hash_ignores_order_names_and_repeats():
    a = study("sweep:\n  random_seed: [1, 2]\nrepeats: 1\n")
    b = study("sweep:\n  random_seed: [2, 1]\nrepeats: 3\ncycle_order: shuffled\nname: other\n")
    c = study("sweep:\n  random_seed: [1, 3]\n")
    assert a.study_hash == b.study_hash != c.study_hash
