"""`rplat report rationalyst` counts RATIONALYST's own work only, in an experiment that also holds TDG jobs."""

from __future__ import annotations

from rplat.models import TrainingMetric
from rplat.reports import rationalyst_report
from rplat.store import transaction

import factories as make
from stores import Store


def test_the_funnel_counts_only_the_rationale_models_training_steps(db: Store) -> None:
    with transaction(db.engine()) as session:
        mixed = make.experiment(session, "mixed")
        rationalyst = make.job(session, "train-rationalyst", {}, experiment=mixed)
        nat = make.job(session, "train-nat", {}, experiment=mixed)
        session.add_all([TrainingMetric(job_id=rationalyst.id, step=s, loss=1.0) for s in (1, 2)]
                        + [TrainingMetric(job_id=nat.id, step=s, loss=1.0) for s in (1, 2, 3)])
    assert rationalyst_report(db.engine(), experiment="mixed")["funnel"]["train_steps"] == 2
    assert rationalyst_report(db.engine())["funnel"]["train_steps"] == 2
