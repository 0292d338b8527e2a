"""Study frame readers, their arms, costs and report (the lead registers the readers here)."""
