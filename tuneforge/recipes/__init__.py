"""One readable training recipe per method: sft, dpo, reward, grpo."""
