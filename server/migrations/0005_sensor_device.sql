-- Which device may post a sensor's readings: the `sub` of a device-role token. A device
-- token posts readings only for sensors whose `device` is its own sub (SPEC §6).
ALTER TABLE sensors ADD COLUMN device TEXT;
