//! End-to-end tests: the real server, real agents and the virtual lab.
