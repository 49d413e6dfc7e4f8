package eventbus_test

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/ccm-dev/ccm/eventbus"
)

func TestPublishSelectsSubscribers(t *testing.T) {
	b := eventbus.New(map[string][]string{
		"nginx-vhosts":  {"sites", "certificates"},
		"php-fpm-pools": {"sites"},
		"crontab":       {"users"},
		"static":        nil,
	})
	assert.Equal(t, []string{"nginx-vhosts", "php-fpm-pools"}, b.Publish("sites"))
	assert.Equal(t, []string{"crontab", "nginx-vhosts"}, b.Publish("certificates", "users"))
	assert.Empty(t, b.Publish("unknown"))
}

func ExampleBus() {
	b := eventbus.New(map[string][]string{"nginx-vhosts": {"sites"}, "crontab": {"users"}})
	fmt.Println(b.Publish("sites"))
	// Output: [nginx-vhosts]
}
