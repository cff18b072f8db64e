"""Integrations with other training frameworks: each module here lets a framework's own
training loop drive a learnprune method (attach the gates, add the regularizer to the loss,
call ``after_step()`` after every optimizer step, save the method's state in the
framework's checkpoints, finalize at the end). Each needs its framework installed (an extra
of the package) and is imported explicitly, e.g. ``learnprune.integrations.lightning``
or ``learnprune.integrations.huggingface`` (a ``transformers.Trainer`` callback).
"""
