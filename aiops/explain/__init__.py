"""Explanations: evidence, root-cause candidates, knowledge base and LLM narration."""
