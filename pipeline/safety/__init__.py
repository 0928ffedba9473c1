"""Safety and decontamination: removal lists (screen), the NSFW head (nsfw), evaluation-set overlap
(decontaminate) and the evaluation index it reads (eval_index, the index-eval command).
"""
