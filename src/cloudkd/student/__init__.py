"""Students: the compact U-Net family, distillation losses, the Lightning module and training."""

#: the default KD loss, chosen by benchmarks/distill_compare.py (3 seeds): CWD kept the labels-only quality where
#: pixel KD from a teacher weaker than the student pulled the student down (benchmarks/results/distill_seeds.md)
DEFAULT_KD = "cwd"
