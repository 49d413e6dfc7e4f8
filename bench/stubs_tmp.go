package main

func (b *bench) throughput() error { return nil }
func (b *bench) rollout() error    { return nil }
func (b *bench) debounce() error   { return nil }
func (b *bench) footprint() error  { return nil }
