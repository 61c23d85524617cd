"""Resource bounds under attack: a server process, attackers, and a latency probe."""
