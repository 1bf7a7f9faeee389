"""The vLLM Workbook: labs, runtime helpers and graded exercises for learning vLLM from the inside."""
