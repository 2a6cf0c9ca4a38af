"""The reward model (method steps 3-4 and 9): a scalar head on a causal-LM backbone, its listwise loss, its
training data from graded samples, and scoring samples for RM@N.

Heavy imports (torch, transformers) happen when a submodule is used:
  mathloop.reward.model   RewardModel (save/load), load_reward_model (also existing seq-cls and Qwen2.5-Math-RM)
  mathloop.reward.loss    listwise_loss, pairwise_accuracy
  mathloop.reward.data    build_rm_groups, split_groups, ContaminationIndex, is_contaminated
  mathloop.reward.score   score_samples, score_file
"""
