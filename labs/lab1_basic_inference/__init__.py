"""lab1_basic_inference"""
