module github.com/tandem-ha/tandem

go 1.23

require (
	github.com/fsnotify/fsnotify v1.8.0
	github.com/go-stomp/stomp/v3 v3.1.5
	github.com/google/uuid v1.6.0
	github.com/sirupsen/logrus v1.9.3
	golang.org/x/sys v0.13.0
	gopkg.in/yaml.v3 v3.0.1
)
