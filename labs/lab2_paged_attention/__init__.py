"""lab2_paged_attention"""
