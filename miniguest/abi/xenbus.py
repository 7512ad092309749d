"""public/io/xenbus.h: the states a frontend and its backend step through in the store (`.../state`)."""
from __future__ import annotations

XenbusStateUnknown = 0
XenbusStateInitialising = 1
XenbusStateInitWait = 2          # backend: waiting for the frontend's details (after its own set-up)
XenbusStateInitialised = 3       # frontend: details written (ring-ref, event-channel), waiting for the backend
XenbusStateConnected = 4
XenbusStateClosing = 5
XenbusStateClosed = 6
XenbusStateReconfiguring = 7
XenbusStateReconfigured = 8

STATE_NAMES = {0: "Unknown", 1: "Initialising", 2: "InitWait", 3: "Initialised", 4: "Connected", 5: "Closing",
               6: "Closed", 7: "Reconfiguring", 8: "Reconfigured"}
