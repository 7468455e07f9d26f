"""The fleet: this gateway's presence and health on the integrator's central MQTT broker (``fleet:``), and the
``meter-gateway fleet`` view of every gateway there.

Topics, under ``<prefix>/<gateway id>/`` (all retained, QoS 1; nothing secret in any of them):

- ``state``: ``online`` on connect (version, start time); the broker's last will sets it ``offline`` (reason
  ``lost``) when the gateway dies without a goodbye; a clean stop publishes ``offline`` (reason ``stopped``).
- ``health``: the ``/health`` evaluation and the figures behind it (queue depth and oldest undelivered age per
  platform, clock, each meter's availability and last good read), every ``health_every`` and on a change, at most
  once per ``min_gap``.
- ``meters/<meter>/availability``: ``online``, ``offline`` or ``unknown``; set ``unknown`` at a clean stop. A dead
  gateway cannot change them: a consumer takes them together with ``state`` (both must say online), as the fleet
  view does.
"""
