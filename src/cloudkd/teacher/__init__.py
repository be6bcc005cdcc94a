"""The nnU-Net v2 teacher: convert, plan, train, predict, and an in-process teacher for online distillation.

nnunetv2 is used unforked. It reads a few settings from the environment *when it is first imported*, so this
package sets CPU-friendly defaults before anything imports it (a value the user already set wins):

* ``nnUNet_def_n_proc``: the number of cores, at most 8 (nnU-Net also uses it as the torch thread count at
  inference); preprocessing and fingerprinting are given an explicit process count by cloudkd.

``nnUNet_n_proc_DA`` (data-augmentation workers) is read by nnU-Net at run time: cloudkd uses 0 while training
(augmentation in the training process, no worker processes on a small CPU) and 1 while planning (nnU-Net's
planner cannot run with 0), unless the user set it.

``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and ``nnUNet_extTrainer`` are set by
:class:`cloudkd.teacher.workspace.Workspace` around every call into nnU-Net, so a user never sets them by hand.
"""

import os

os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(os.cpu_count() or 1, 8))))
