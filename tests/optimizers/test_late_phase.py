"""Late-phase SAM: the schedule, the registry's late_sam, and its passes."""

import optax
import pytest

from graphsam_optax import fsam
from graphsam_optax import get_optimizer
from graphsam_optax import gsam
from graphsam_optax import late_phase_schedule
from graphsam_optax import sam
from tests.optimizers import family_reference as ref

STEPS = 8


def test_late_sam_is_plain_then_sam_with_the_passes_to_match():
  tx = get_optimizer(
    "late_sam", optax.sgd(0.5), total_steps=STEPS, rho=0.3, start=0.5
  )
  got, passes, _ = ref.run(tx, STEPS)
  want, _ = ref.sam(
    ref.W0, ref.SGD(0.5), STEPS, lambda t: 0.0 if t < 4 else 0.3
  )
  ref.assert_history_close(got, want)
  assert passes == [1] * 4 + [2] * 4


@pytest.mark.parametrize("factory", [gsam, fsam])
def test_every_two_pass_method_skips_the_pass_before_the_switch(factory):
  rho = late_phase_schedule(0.3, total_steps=STEPS, start=0.75)
  _, passes, _ = ref.run_family(factory, "sgd", STEPS, rho=rho)
  assert passes == [1] * 6 + [2] * 2


def test_schedule_values_and_limits():
  always = late_phase_schedule(0.3, total_steps=10, start=0.0)
  never = late_phase_schedule(0.3, total_steps=10, start=1.0)
  assert [float(always(t)) for t in (0, 9)] == pytest.approx([0.3, 0.3])
  assert [float(never(t)) for t in (0, 9)] == [0.0, 0.0]
  nested = late_phase_schedule(lambda t: 0.1 * t, total_steps=10, start=0.5)
  assert [float(nested(t)) for t in (4, 6)] == pytest.approx([0.0, 0.6])


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"start": 1.5}, "start=1.5"),
    ({"total_steps": 0}, "total_steps=0"),
    ({"rho": -0.1}, "rho=-0.1"),
  ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
  with pytest.raises(ValueError, match=match):
    late_phase_schedule(**{"rho": 0.05, "total_steps": 10, **kwargs})


def test_registry_needs_total_steps():
  with pytest.raises(ValueError, match="needs total_steps"):
    get_optimizer("late_sam", optax.adam(1e-3))


def test_sam_skips_the_zero_rho_pass_only_when_asked():
  # late_sam asks; plain SAM keeps one straight program (both passes).
  rho = late_phase_schedule(0.3, total_steps=STEPS, start=0.75)
  for skip, before in ((True, 1), (False, 2)):
    _, passes, _ = ref.run_family(
      lambda opt, rho, skip=skip: sam(opt, rho, skip_zero_rho=skip),
      "sgd",
      STEPS,
      rho=rho,
    )
    assert passes == [before] * 6 + [2] * 2


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_skipping_the_zero_rho_pass_keeps_its_rule(adaptive):
  # The branch that skips the pass must still scale the ascent as ASAM does.
  rho = late_phase_schedule(0.5, total_steps=STEPS, start=0.5)
  got, passes, _ = ref.run_family(
    sam, "sgd", STEPS, rho=rho, adaptive=adaptive, skip_zero_rho=True
  )
  want, _ = ref.sam(
    ref.W0,
    ref.SGD(0.5),
    STEPS,
    lambda t: 0.0 if t < STEPS // 2 else 0.5,
    adaptive=adaptive,
  )
  ref.assert_history_close(got, want)
  assert passes == [1] * 4 + [2] * 4
