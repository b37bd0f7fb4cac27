"""Campaign scheduler (calendars, campaign definitions, planning, paced sending): issue 5.

Empty for now.
"""
