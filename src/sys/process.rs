//! Process-level calls used to detach the daemon (fork, setsid, redirecting standard streams).
