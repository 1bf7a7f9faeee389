"""lab3_continuous_batching"""
