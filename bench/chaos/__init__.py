"""Package bench.chaos runs cache-edge under injected faults and checks it after every answer.

``checker`` holds the invariants (pure), ``cluster`` the private servers and the faults
that can be done to them, ``load`` the clients, ``faults`` the seeded schedule, and
``run`` ties them into one run and its report. ``python -m bench.chaos --seconds 60``
runs it alone; ``python -m bench --only chaos`` runs it as a bench scenario.
"""
