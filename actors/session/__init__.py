"""A session and everything that lives as long as it does.

- `actor`: `SessionActor`, the live activation of one browser session (its messages, tools,
  files and streams), and the options it is started with.
- `lifecycle`: the activation's state machine (spare → live → closing → gone), the idle watch,
  passivation and the reports to the registry.
- `turn` and `turn_log`: the turn driver (one turn at a time, journaled, stoppable) and the
  event log a running turn keeps for its watchers.
- `events`: the /events hub (replay from the store, then live).
- `streams`, `notification`, `supervision`: notification streams (schedules in the store), the
  session's one child actor that runs them, and the registry's restarts of lost children.
- `files`: the session's files. `names`: actor names and the session key.
- `registry`: the cluster's one registry of live sessions (the live cap, passivation to make
  room, listener leases, the detector's deployment).

Nothing is imported here: `actors.session.names` must stay cheap for the gateway.
"""
