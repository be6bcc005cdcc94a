"""Students: the compact U-Net family (:mod:`.unet`, :mod:`.models`), training defaults (:mod:`.config`), KD
losses (:mod:`.distill`), the Lightning module, online teachers, training (:mod:`.train`), run loading
(:mod:`.runs`), the one prediction rule (:mod:`.infer`) and batched prediction (:mod:`.predict`)."""
