"""lab6_profiling"""
