"""Students: the compact U-Net family, distillation losses, the Lightning module and training."""

#: the default KD loss of ``cloudkd distill`` / TrainConfig: per pixel, which is well posed with or without labels
#: (CWD is invariant to a constant shift of the logits, so distilled without labels it cannot place the 0
#: threshold). With labels, ``make demo`` uses CWD: over 3 seeds with a teacher weaker than its students it kept
#: the labels-only quality where pixel KD pulled the student down (benchmarks/results/distill_seeds.md).
DEFAULT_KD = "pixel"
#: the KD loss of ``make demo``'s student (labels + online KD)
DEMO_KD = "cwd"
